"""Loaded LoRA adapters by name, each name at its current version. Lives in the core: loads, unloads
and lookups happen between steps.

Hot-swap rules: a request holds the versions of the adapters it was admitted with until it finishes.
Loading a name again with other content makes a new version: later requests get it, requests holding
the old one finish on it, and the old one is freed when its last request ends. Loading the same name
with the same bytes is a no-op (it may pin it). Unloading an adapter that queued or running requests
hold is refused with an error naming how many. Which idle adapter to evict for the residency budget is
the engine's choice (it also sees requests still being prepared); the hold count here is the last guard.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from engine.errors import AdapterInUse, AdapterVersionMismatch, UnknownAdapter, listed
from engine.info import AdapterInfo, LoadedAdapter
from engine.llama.adapters.files import AdapterFileBytes, shown
from engine.llama.adapters.loading import CheckedAdapterFile
from engine.request import AdapterKey, AdapterRef
from engine.result import AdapterUse


class AdapterRunner(Protocol):
    def load_adapter(self, file: AdapterFileBytes) -> Any: ...
    def free_adapter(self, handle: Any) -> None: ...


@dataclass(eq=False)
class _Version:
    """One version of a named adapter: its llama.cpp handle and who holds it."""

    info: AdapterInfo
    handle: Any
    use: AdapterUse  # how receipts name it
    pinned: bool = False
    last_used: datetime | None = None
    served: int = 0
    in_flight: int = 0
    replaced: bool = False  # a newer version took its name: freed when its last request ends

    @property
    def weights(self) -> str:
        """What a KV computed with it depends on: its name and content (the prefix cache's and the
        scheduler's key), so no cached prompt outlives the weights it was computed with."""
        return f"{self.info.name}@{self.info.sha256[:16]}"

    def public(self) -> AdapterInfo:
        return self.info.model_copy(
            update={
                "requests_served": self.served,
                "requests_in_flight": self.in_flight,
                "pinned": self.pinned,
                "last_used_at": self.last_used,
            }
        )


AdapterHold = tuple[_Version, ...]  # the versions a request was admitted with, in its key's order


class AdapterRegistry:
    def __init__(self, runner: AdapterRunner) -> None:
        self._runner = runner
        self._current: dict[str, _Version] = {}
        self._replaced: list[_Version] = []  # older versions still held by requests

    # -- management -----------------------------------------------------------------------------------

    def load(
        self, checked: CheckedAdapterFile, *, pin: bool = False, expect_sha256: str | None = None
    ) -> LoadedAdapter:
        name, file = checked.name, checked.file
        existing = self._current.get(name)
        if expect_sha256 is not None and (existing is None or existing.info.sha256 != expect_sha256.lower()):
            raise AdapterVersionMismatch(
                f"adapter {name!r} is "
                + (f"at sha256 {existing.info.sha256}" if existing else "not loaded")
                + f", not at the expected {shown(expect_sha256)}: it changed since you read it; list_adapters "
                "shows the resident version"
            )
        if existing is not None and existing.info.sha256 == checked.sha256:
            existing.pinned |= pin
            return LoadedAdapter(adapter=existing.public(), newly_loaded=False)
        meta = checked.info
        info = AdapterInfo(  # built first: a load that fails anywhere leaves nothing changed
            name=name,
            path=str(file.path),
            file_size=file.size,
            sha256=checked.sha256,
            source_format=checked.source_format,
            source_sha256=checked.source_sha256,
            warnings=checked.warnings,
            version=existing.info.version + 1 if existing else 1,
            rank=meta.rank,
            alpha=meta.alpha,
            target_modules=meta.target_modules,
            architecture=meta.architecture,
            loaded_at=datetime.now(UTC),
            requests_served=0,
            requests_in_flight=0,
        )
        handle = self._runner.load_adapter(file)  # llama.cpp parses the bytes already in memory
        use = AdapterUse(name=name, sha256=checked.sha256, scale=1.0, source_sha256=checked.source_sha256 or None)
        version = self._current[name] = _Version(info, handle, use, pinned=pin or bool(existing and existing.pinned))
        if existing is not None:
            self._retire(existing)
        return LoadedAdapter(
            adapter=version.public(),
            newly_loaded=True,
            replaced_sha256=existing.info.sha256 if existing else None,
        )

    def unload(self, name: str) -> AdapterInfo:
        version = self._require(name)
        if version.in_flight:
            raise AdapterInUse(
                f"adapter {name!r} is used by {version.in_flight} queued or running request(s); "
                "unload it after they finish (list_adapters shows requests_in_flight)"
            )
        self._runner.free_adapter(version.handle)
        del self._current[name]
        return version.public()

    def names(self) -> tuple[str, ...]:
        return tuple(self._current)

    def list(self) -> list[AdapterInfo]:
        return [v.public() for v in self._current.values()]

    def close(self) -> None:
        for version in [*self._current.values(), *self._replaced]:
            self._runner.free_adapter(version.handle)
        self._current.clear()
        self._replaced.clear()

    # -- requests --------------------------------------------------------------------------------------

    def check(self, refs: Iterable[AdapterRef]) -> None:
        """Raise UnknownAdapter unless every adapter a request names is loaded."""
        for ref in refs:
            self._require(ref.name)

    def acquire(self, key: AdapterKey) -> AdapterHold:
        """Hold the current versions of a checked request's set until `release`: they are not freed meanwhile."""
        now = datetime.now(UTC)
        hold = tuple(self._current[name] for name, _ in key)
        for version in hold:
            version.in_flight += 1
            version.last_used = now
        return hold

    def release(self, hold: AdapterHold) -> None:
        for version in hold:
            version.in_flight -= 1
            version.served += 1
            if version.replaced and not version.in_flight:
                self._runner.free_adapter(version.handle)
                self._replaced.remove(version)

    @staticmethod
    def weights_key(hold: AdapterHold, key: AdapterKey) -> AdapterKey:
        """The request's set by version (name@content, scale): what the KV it computes depends on."""
        return tuple((version.weights, scale) for version, (_, scale) in zip(hold, key, strict=True))

    @staticmethod
    def fingerprints(hold: AdapterHold, key: AdapterKey) -> tuple[AdapterUse, ...]:
        """Each adapter of a held set by hash, with its scale: for receipts."""
        return tuple(v.use.model_copy(update={"scale": scale}) for v, (_, scale) in zip(hold, key, strict=True))

    @staticmethod
    def handles(hold: AdapterHold, key: AdapterKey) -> list[tuple[Any, float]]:
        return [(version.handle, scale) for version, (_, scale) in zip(hold, key, strict=True)]

    def _retire(self, version: _Version) -> None:
        if version.in_flight:
            version.replaced = True
            self._replaced.append(version)
        else:
            self._runner.free_adapter(version.handle)

    def _require(self, name: str) -> _Version:
        version = self._current.get(name)
        if version is None:
            raise unknown_adapter(name, self._current)
        return version


def unknown_adapter(name: str, loaded: Iterable[str], *, searched: bool = False) -> UnknownAdapter:
    """The error for a request or command naming an adapter that is not loaded (`searched`: nor found in
    the adapter directories to load on first use)."""
    on_disk = (
        f", and the adapter directories hold no {shown(name + '.gguf')} or adapter folder {shown(name + '/')}"
        if searched
        else ""
    )
    return UnknownAdapter(
        f"no adapter named {shown(name)} is loaded{on_disk}; loaded adapters: {listed(sorted(loaded))} "
        "(see list_adapters)"
    )
